"""``specexec serve``: an OpenAI-compatible HTTP server on one loaded engine.

| module | concern |
| --- | --- |
| ``schemas`` | request bodies (OpenAI fields and ours), validated by pydantic |
| ``errors`` | OpenAI-shaped error bodies and the exception handlers that produce them |
| ``params`` | a request -> prompt token ids, a :class:`~specexec.config.GenerationConfig`, stop strings |
| ``stops`` | cutting streamed text at the first stop string |
| ``worker`` | the bounded queue and the one thread that drives the engine |
| ``metrics`` | Prometheus counters, gauges and histograms |
| ``responses`` | OpenAI's response bodies and streamed chunks |
| ``app`` | the FastAPI routes, the engine's loading, the SSE stream |
"""

from .app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
