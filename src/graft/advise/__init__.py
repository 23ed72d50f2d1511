"""Which strategy fits this data and model, answered before training: `graft.advise.advisor` (the flow),
`logme` (You et al.'s evidence), `features` (every layer group in one pass), `recommend` (the quadrants, pure),
`language` (causal LMs), `facts` (the data)."""

from graft.advise.advisor import advise, format_advice

__all__ = ["advise", "format_advice"]
