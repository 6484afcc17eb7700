"""The diva method: config.py (its section), method.py (the Method), model.py, recipes."""
