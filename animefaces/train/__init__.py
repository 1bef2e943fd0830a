"""Training runs: the face sweep (sweep), the character task (character), and what both
share (common).
"""
