"""Open-vocabulary 3D detection and pose: point cloud -> oriented boxes with class names and poses."""
