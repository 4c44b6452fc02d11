"""Committee sizes: how many faults a committee tolerates and how many votes make a quorum."""


def fault_tolerance(committee_size: int) -> int:
    """f, the most Byzantine members a committee of this size tolerates (n >= 3f + 1)."""
    return max(0, (committee_size - 1) // 3)


def quorum_size(committee_size: int) -> int:
    """Votes needed to commit: 2f+1 when n = 3f+1; in general any two quorums share an honest member."""
    return (committee_size + fault_tolerance(committee_size)) // 2 + 1
