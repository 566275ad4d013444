"""Procedural chest phantoms with ground truth (CT, lobes, airway, vessels) and the reports that describe them."""
