"""Token counts from serving engines: Prometheus endpoints (:mod:`.prometheus`) and Ollama
API replies (:mod:`.ollama`). The parsers take text or JSON, so tests feed real captures
through the same code that reads a live endpoint."""
