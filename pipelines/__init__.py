"""Ray pipelines composing the library: render, occupancy-gt, evaluate, sweep. No maths here."""
