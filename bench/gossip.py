"""`python bench/gossip.py`: the name issue #6 asks for; the bench itself is bench/gossip_path.py.

Run as a script, this file's folder comes first on sys.path, where `gossip` would be this file
and not the project's `gossip` package: so the folder is taken off the path before anything else
is imported.
"""

import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent))

from bench.gossip_path import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
