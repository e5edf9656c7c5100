"""ROS 2 glue of the timar agent. The model, turn assembly and joint math live in timar_model."""
