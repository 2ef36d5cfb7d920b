"""Replies from a model: sampling (sampling.py), prompt formatting with the system prompt in one place (prompt.py),
the HF decode loop (hf.py), the llama.cpp backend (llamacpp.py) and its GGUF export (gguf.py), the interface both
share (backend.py), reply text (text.py) and terminal chat (terminal.py)."""
