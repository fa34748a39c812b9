"""The IPVS table: plain values, the kernel through netlink, an in-memory stand-in."""
