"""The paper's result tables (Yu & Koltun, arXiv 1511.07122, Tables 2-8), IoU in %, as data in one place; and
fyu/drn's published Cityscapes numbers of its DRNs (`DRN`).

Each table: its title, the dataset it is on, the column names (classes in the table's order, then mIoU) and
the rows (model, values). The VOC tables omit background, but their mIoU averages 21 classes with it.
"""

TABLES = {
    2: dict(
        title='VOC-2012 test, front ends (VOC + SBD training)',
        dataset='pascal_voc',
        columns=('aero', 'bike', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'table', 'dog',
            'horse', 'mbike', 'person', 'plant', 'sheep', 'sofa', 'train', 'tv', 'mIoU'),
        rows=(
            ('FCN-8s', (76.8, 34.2, 68.9, 49.4, 60.3, 75.3, 74.7, 77.6, 21.4, 62.5, 46.8, 71.8, 63.9, 76.5, 73.9,
                45.2, 72.4, 37.4, 70.9, 55.1, 62.2)),
            ('DeepLab', (72.0, 31.0, 71.2, 53.7, 60.5, 77.0, 71.9, 73.1, 25.2, 62.6, 49.1, 68.7, 63.3, 73.9, 73.6,
                50.8, 72.3, 42.1, 67.9, 52.6, 62.1)),
            ('DeepLab-Msc', (74.9, 34.1, 72.6, 52.9, 61.0, 77.9, 73.0, 73.7, 26.4, 62.2, 49.3, 68.4, 64.1, 74.0,
                75.0, 51.7, 72.7, 42.5, 67.2, 55.7, 62.9)),
            ('Our front end', (82.2, 37.4, 72.7, 57.1, 62.7, 82.8, 77.8, 78.9, 28.0, 70.0, 51.6, 73.1, 72.8, 81.5,
                79.1, 56.6, 77.1, 49.9, 75.3, 60.9, 67.6)),
        )),
    3: dict(
        title='VOC-2012 validation, controlled evaluation (COCO-trained front end; val never used for training)',
        dataset='pascal_voc',
        columns=('aero', 'bike', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'table', 'dog',
            'horse', 'mbike', 'person', 'plant', 'sheep', 'sofa', 'train', 'tv', 'mIoU'),
        rows=(
            ('Front end', (86.3, 38.2, 76.8, 66.8, 63.2, 87.3, 78.7, 82.0, 33.7, 76.7, 53.5, 73.7, 76.0, 76.6,
                83.0, 51.9, 77.8, 44.0, 79.9, 66.3, 69.8)),
            ('Front + Basic', (86.4, 37.6, 78.5, 66.3, 64.1, 89.9, 79.9, 84.9, 36.1, 79.4, 55.8, 77.6, 81.6, 79.0,
                83.1, 51.2, 81.3, 43.7, 82.3, 65.7, 71.3)),
            ('Front + Large', (87.3, 39.2, 80.3, 65.6, 66.4, 90.2, 82.6, 85.8, 34.8, 81.9, 51.7, 79.0, 84.1, 80.9,
                83.2, 51.2, 83.2, 44.7, 83.4, 65.6, 72.1)),
            ('Front end + CRF', (89.2, 38.8, 80.0, 69.8, 63.2, 88.8, 80.0, 85.2, 33.8, 80.6, 55.5, 77.1, 80.8,
                77.3, 84.3, 53.1, 80.4, 45.0, 80.7, 67.9, 71.6)),
            ('Front + Basic + CRF', (89.1, 38.7, 81.4, 67.4, 65.0, 91.0, 81.0, 86.7, 37.5, 81.0, 57.0, 79.6, 83.6,
                79.9, 84.6, 52.7, 83.3, 44.3, 82.6, 67.2, 72.7)),
            ('Front + Large + CRF', (89.6, 39.9, 82.7, 66.7, 67.5, 91.1, 83.3, 87.4, 36.0, 83.3, 52.5, 80.7, 85.7,
                81.8, 84.4, 52.6, 84.4, 45.3, 83.7, 66.7, 73.3)),
            ('Front end + RNN', (88.8, 38.1, 80.8, 69.1, 65.6, 89.9, 79.6, 85.7, 36.3, 83.6, 57.3, 77.9, 83.2,
                77.0, 84.6, 54.7, 82.1, 46.9, 80.9, 66.7, 72.5)),
            ('Front + Basic + RNN', (89.0, 38.4, 82.3, 67.9, 65.2, 91.5, 80.4, 87.2, 38.4, 82.1, 57.7, 79.9, 85.0,
                79.6, 84.5, 53.5, 84.0, 45.0, 82.8, 66.2, 73.1)),
            ('Front + Large + RNN', (89.3, 39.2, 83.6, 67.2, 69.0, 92.1, 83.1, 88.0, 38.4, 84.8, 55.3, 81.2, 86.7,
                81.3, 84.3, 53.6, 84.4, 45.8, 83.8, 67.0, 73.9)),
        )),
    4: dict(
        title='VOC-2012 test (evaluation server); "Context" = Large module on the COCO-trained front end',
        dataset='pascal_voc',
        columns=('aero', 'bike', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'table', 'dog',
            'horse', 'mbike', 'person', 'plant', 'sheep', 'sofa', 'train', 'tv', 'mIoU'),
        rows=(
            ('DeepLab++', (89.1, 38.3, 88.1, 63.3, 69.7, 87.1, 83.1, 85.0, 29.3, 76.5, 56.5, 79.8, 77.9, 85.8,
                82.4, 57.4, 84.3, 54.9, 80.5, 64.1, 72.7)),
            ('DeepLab-MSc++', (89.2, 46.7, 88.5, 63.5, 68.4, 87.0, 81.2, 86.3, 32.6, 80.7, 62.4, 81.0, 81.3, 84.3,
                82.1, 56.2, 84.6, 58.3, 76.2, 67.2, 73.9)),
            ('CRF-RNN', (90.4, 55.3, 88.7, 68.4, 69.8, 88.3, 82.4, 85.1, 32.6, 78.5, 64.4, 79.6, 81.9, 86.4, 81.8,
                58.6, 82.4, 53.5, 77.4, 70.1, 74.7)),
            ('Front end', (86.6, 37.3, 84.9, 62.4, 67.3, 86.2, 81.2, 82.1, 32.6, 77.4, 58.3, 75.9, 81.0, 83.6,
                82.3, 54.2, 81.5, 50.1, 77.5, 63.0, 71.3)),
            ('Context', (89.1, 39.1, 86.8, 62.6, 68.9, 88.2, 82.6, 87.7, 33.8, 81.2, 59.2, 81.8, 87.2, 83.3, 83.6,
                53.6, 84.9, 53.7, 80.5, 62.9, 73.5)),
            ('Context + CRF', (91.3, 39.9, 88.9, 64.3, 69.8, 88.9, 82.6, 89.7, 34.7, 82.7, 59.5, 83.0, 88.4, 84.2,
                85.0, 55.3, 86.7, 54.4, 81.9, 63.6, 74.7)),
            ('Context + CRF-RNN', (91.7, 39.6, 87.8, 63.1, 71.8, 89.7, 82.9, 89.8, 37.2, 84.0, 63.0, 83.3, 89.0,
                83.8, 85.1, 56.8, 87.6, 56.0, 80.2, 64.7, 75.3)),
        )),
    5: dict(
        title='CamVid test (11 classes)',
        dataset='camvid',
        columns=('Building', 'Tree', 'Sky', 'Car', 'Sign', 'Road', 'Pedestrian', 'Fence', 'Pole', 'Sidewalk',
            'Bicyclist', 'mIoU'),
        rows=(
            ('ALE', (73.4, 70.2, 91.1, 64.2, 24.4, 91.1, 29.1, 31.0, 13.6, 72.4, 28.6, 53.6)),
            ('SuperParsing', (70.4, 54.8, 83.5, 43.3, 25.4, 83.4, 11.6, 18.3, 5.2, 57.4, 8.9, 42.0)),
            ('Liu and He', (66.8, 66.6, 90.1, 62.9, 21.4, 85.8, 28.0, 17.8, 8.3, 63.5, 8.5, 47.2)),
            ('SegNet', (68.7, 52.0, 87.0, 58.5, 13.4, 86.2, 25.3, 17.9, 16.0, 60.5, 24.8, 46.4)),
            ('DeepLab-LFOV', (81.5, 74.6, 89.0, 82.2, 42.3, 92.2, 48.4, 27.2, 14.3, 75.4, 50.1, 61.6)),
            ('Dilation8', (82.6, 76.2, 89.9, 84.0, 46.9, 92.2, 56.3, 35.8, 23.4, 75.3, 55.5, 65.3)),
        )),
    6: dict(
        title='KITTI (Ros et al. split, 46 test images)',
        dataset='kitti',
        columns=('Building', 'Tree', 'Sky', 'Car', 'Sign', 'Road', 'Pedestrian', 'Fence', 'Pole', 'Sidewalk',
            'Bicyclist', 'mIoU'),
        rows=(
            ('Ros et al.', (71.8, 69.5, 84.4, 51.2, 4.2, 72.4, 1.7, 32.4, 2.6, 45.3, 3.2, 39.9)),
            ('DeepLab-LFOV', (82.8, 78.6, 82.4, 78.0, 28.8, 91.3, 0.0, 39.4, 29.9, 72.4, 12.9, 54.2)),
            ('Dilation7', (84.6, 81.1, 83.0, 81.4, 41.8, 92.9, 4.6, 47.1, 35.2, 73.1, 26.4, 59.2)),
        )),
    7: dict(
        title='Cityscapes, Dilation10, class IoU',
        dataset='cityscapes',
        columns=('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'light', 'sign', 'vegetation',
            'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle', 'mIoU'),
        rows=(
            ('val', (97.2, 79.5, 90.4, 44.9, 52.4, 55.1, 56.7, 69.0, 91.0, 58.7, 92.6, 75.7, 50.0, 92.2, 56.2,
                72.6, 54.3, 46.2, 70.1, 68.7)),
            ('test', (97.6, 79.2, 89.9, 37.3, 47.6, 53.2, 58.6, 65.2, 91.8, 69.4, 93.7, 78.9, 55.0, 93.3, 45.5,
                53.4, 47.7, 52.2, 66.0, 67.1)),
        )),
    8: dict(
        title='Cityscapes, Dilation10, category IoU',
        dataset='cityscapes',
        columns=('flat', 'nature', 'object', 'sky', 'construction', 'human', 'vehicle', 'mIoU'),
        rows=(
            ('val', (98.2, 91.4, 62.3, 92.6, 90.7, 77.6, 91.0, 86.3)),
            ('test', (98.3, 91.4, 60.5, 93.7, 90.2, 79.8, 91.8, 86.5)),
        )),
}

# fyu/drn README.md, "Semantic Image Segmentation": Cityscapes val mIoU of its DRNSeg models (segment.py, trained on
# the fine training set; single-scale). Not Yu & Koltun's tables: the DRN paper's authors' released numbers, keyed
# here by model.drn.variant (DRN-A-50 has no variant in models/drn.py: shown for reference).
DRN = 'drn'
TABLES[DRN] = dict(
    title='Cityscapes val, Dilated Residual Networks (fyu/drn README.md; single-scale)',
    dataset='cityscapes',
    columns=('mIoU',),
    rows=(
        ('DRN-A-50', (67.3,)),
        ('DRN-C-26', (68.0,)),
        ('DRN-C-42', (70.9,)),
        ('DRN-D-22', (68.0,)),
        ('DRN-D-38', (71.4,)),
        ('DRN-D-105 (poly lr, random scale and rotation)', (75.6,)),
    ))
DRN_ROWS = {'drn_c_26': 'DRN-C-26', 'drn_c_42': 'DRN-C-42', 'drn_d_22': 'DRN-D-22', 'drn_d_38': 'DRN-D-38',
            'drn_d_105': 'DRN-D-105 (poly lr, random scale and rotation)'}
