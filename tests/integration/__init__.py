"""Real exports (`simpool-export`), real servers on loopback, real clients and command lines."""
