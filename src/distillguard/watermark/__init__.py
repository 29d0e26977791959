"""watermark"""
