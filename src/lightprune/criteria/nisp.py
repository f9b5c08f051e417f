"""NISP (Yu et al. 2018) with Inf-FS (Roffo et al. 2015) final-response scores."""
