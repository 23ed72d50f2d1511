"""The data doctor: `graft inspect` finds duplicates, conflicting labels, likely mislabeled examples and odd inputs,
each with its file and row; `--fix` writes cleaned copies; `check_data` is its quick part at the start of a run.

Modules: `examples` reads the recipe's files, `duplicates` and `profile` need no model, `features` and `labels` use
the model's frozen features and a probe, `fix` writes the cleaned copies, `inspection` runs it all. The page is
`graft.report.inspect_page`.
"""

from graft.doctor.inspection import check_data, inspect

__all__ = ["check_data", "inspect"]
