"""Running fedgate on this machine: processes, topology, proxy, SuperLink, simulation, runs."""
