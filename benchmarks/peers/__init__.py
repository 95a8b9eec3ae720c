"""Peer libraries run on the same problems as ours (dattri)."""
