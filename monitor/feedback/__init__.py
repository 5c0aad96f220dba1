"""Feedback: users' and graders' verdicts on generations, the labels calibration needs."""
