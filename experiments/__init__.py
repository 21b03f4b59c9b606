"""Research built on swaa-train: each experiment imports the product as a user would."""
