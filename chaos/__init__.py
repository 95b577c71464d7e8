"""The fault campaign (`make chaos`): the real daemon driven through faults on loopback.

chaos/proxy.py is the TCP proxy put in front of every peer of the daemon (bank TCP, bank SFTP,
the ISO bank's HTTPS, the core's HTTP) that cuts, delays, duplicates and drips; chaos/run.py
drives a run and checks it against evidence the gateway does not own.
"""
