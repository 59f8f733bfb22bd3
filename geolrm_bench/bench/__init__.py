"""`make bench`: each module here has ``main() -> None`` printing one section's table.

Sections measure in one run and print ratios against a baseline measured in the same
run, so numbers are comparable on any machine.
"""
