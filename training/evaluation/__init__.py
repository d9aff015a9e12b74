"""Evaluation: metrics, agreement with human raters, explanations (saliency, Grad-CAM), the operating point."""
