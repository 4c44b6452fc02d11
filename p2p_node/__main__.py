from p2p_node.cli import console_main

console_main()
