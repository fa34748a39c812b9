"""The director: accepts agents, turns their health into IPVS weights."""
