"""The lab: network namespaces, cgroups, backends and load for the experiment and the kernel tests."""
