"""Helpers for tests: the kernel VM, in-memory NECP links, daemons, ipvsadm."""
