"""Training and evaluation support: synthetic videos with ground-truth masklets, and DAVIS-style metrics."""
