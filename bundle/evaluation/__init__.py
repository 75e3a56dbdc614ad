"""Evaluation stage: the held-out protocol (SR against cubic B-spline and trilinear per degradation), tables,
figures and LPIPS."""
