"""Frame to tensor to relevance to frame: preprocessing, the frame processors, colour maps and overlays."""
