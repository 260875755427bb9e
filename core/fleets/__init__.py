"""Encoder fleets: supervisord slots on one machine, EC2 instances on AWS."""
