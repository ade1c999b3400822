"""lama's diagnostics page and metrics endpoints (docs/metrics.md): :mod:`lama.web.http` (a small
loopback HTTP server with a token), :mod:`lama.web.diag` (``lama serve --http``),
:mod:`lama.web.observer`, :mod:`lama.web.page`, :mod:`lama.web.commmetrics` (``lama comm-server
--metrics``). Standard library only."""
