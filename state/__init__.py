"""mastmirror's state store: every exposure seen, its state, the polls and the cursor (SQLite)."""

from state.store import DatasetRow, StateStore, Transition

__all__ = ["DatasetRow", "StateStore", "Transition"]
