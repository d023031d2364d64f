"""The concurrency core: a generic actor runtime (``actors.runtime``) and the chat
session actors with their hub and agents client (``actors.chat``). No web framework here."""
