"""The applications behind the commands: video, webcam, stills, sample, serve, evaluate, bench, train."""
