"""Pure code: models, maths and decisions. Imports nothing else of ours."""
