"""The agent on a real server: measures load, answers directors over NECP."""
