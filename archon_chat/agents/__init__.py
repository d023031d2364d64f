"""The built-in agents service: ``rag``, ``document`` and ``task`` agents streaming their
answers as Server-Sent Events; offline (extractive and rule-based) unless an
OpenAI-compatible LLM endpoint is configured.

::

    app = create_agents_app(settings)                      # a quart-trio app
    port = await nursery.start(serve_agents, settings, host, port)
    run_agents(settings)                                   # ``archon-chat agents``
"""

from __future__ import annotations

from archon_chat.agents.service import create_agents_app, run_agents, serve_agents

__all__ = ["create_agents_app", "run_agents", "serve_agents"]
