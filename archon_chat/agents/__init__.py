"""Server-Sent-Events agents service built in: rag, document and task."""
