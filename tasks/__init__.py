"""One module per stage: pure functions that do the work, and thin Prefect tasks around them."""
