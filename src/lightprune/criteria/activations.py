"""Activation-statistics criteria: APoZ, class selectivity, entropy / MI / KL selectivity / labeled MI."""
