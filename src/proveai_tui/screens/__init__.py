"""The console's screens: the live overview, one case, and the list of key bindings."""
