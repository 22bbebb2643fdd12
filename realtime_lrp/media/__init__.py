"""Media I/O: video files read and written with PyAV, live cameras, and the display window."""
