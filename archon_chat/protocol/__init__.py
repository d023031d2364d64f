"""Engine.IO v4 / Socket.IO v5, sans-IO."""
