"""Feed fetching and parsing: fetch.py (HTTP), guard.py (address policy), backoff.py."""
