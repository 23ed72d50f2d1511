"""Reading, checking and splitting the user's data.

Rows in messages are 1-based data records, the header not counted (see `graft.data.tables`).
"""

from graft.data.splits import TextSplits, load_labelled_file, load_text_splits
from graft.data.tables import read_table, read_unlabelled_texts

__all__ = ["TextSplits", "load_labelled_file", "load_text_splits", "read_table", "read_unlabelled_texts"]
