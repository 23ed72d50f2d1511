"""What learns, from which epoch, how fast: strategies over layer groups."""
