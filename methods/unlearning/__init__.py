"""Machine unlearning: a TOFU-like forget/retain benchmark (fictitious_authors), the unlearning objectives
of NPO (arXiv:2404.05868) and ULD (arXiv:2406.08607) as pure functions (losses), and TOFU's metrics
(arXiv:2401.06121; metrics)."""
