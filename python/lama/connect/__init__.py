"""Connections between instances (issue 9, docs/connections.md §3): the protocols on an
encrypted connection (:mod:`lama.connect.protocol`), pairing by invitation
(:mod:`lama.connect.pairing`), what a paired contact holds (:mod:`lama.connect.contacts`) and
the connection manager (:mod:`lama.connect.manager`)."""
