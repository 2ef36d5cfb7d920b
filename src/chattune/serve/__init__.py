"""`chattune serve`: an OpenAI-compatible API (app.py, schemas.py), a decode engine (engine.py), a SQLite
conversation and feedback store (store.py), training data from that feedback (feedback.py) and the web chat page
(static/)."""
