"""Transports: sockets in, frames to the intake, replies out once durable."""
