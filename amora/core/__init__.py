"""The sans-I/O core: events in, effects out. No sockets, threads, clocks or SDK imports here."""
