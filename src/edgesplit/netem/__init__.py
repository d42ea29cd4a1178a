"""Link emulation: replay an uplink trace under a real client and server.

``app``: the device's transport paces its uploads (no privileges). ``kernel``: network namespaces, a veth
pair, ``tc`` shaping that follows the trace, and a user-space delaying relay (root only).
"""
